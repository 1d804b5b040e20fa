/**
 * Standard Webhooks verification with WebCrypto, as parascribe signs:
 *   webhook-id: the job id; webhook-timestamp: unix seconds;
 *   webhook-signature: "v1,<base64 HMAC-SHA256 of `${id}.${timestamp}.${rawBody}`>" (a space-separated list).
 * A `whsec_<base64>` secret is base64-decoded; any other secret is used as its UTF-8 bytes.
 * No Convex imports: this module runs in the Convex runtime and in Node (see scripts/verify-cli.ts).
 */
export const TOLERANCE_SECONDS = 5 * 60;

export type Verdict = { ok: true } | { ok: false; status: 400 | 401; error: string };

type Headers = { get(name: string): string | null };

const encoder = new TextEncoder();

function base64ToBytes(b64: string): Uint8Array<ArrayBuffer> {
  const binary = atob(b64);
  const out = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) out[i] = binary.charCodeAt(i);
  return out;
}

function keyBytes(secret: string): Uint8Array<ArrayBuffer> {
  return secret.startsWith("whsec_") ? base64ToBytes(secret.slice("whsec_".length)) : encoder.encode(secret);
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(a.length + b.length);
  out.set(a, 0);
  out.set(b, a.length);
  return out;
}

/** Check headers and the raw body; the timestamp must be within 5 minutes of `nowSeconds`. */
export async function verifyWebhook(
  secret: string,
  headers: Headers,
  body: Uint8Array,
  nowSeconds: number = Date.now() / 1000,
): Promise<Verdict> {
  const id = headers.get("webhook-id");
  const timestamp = headers.get("webhook-timestamp");
  const signatures = headers.get("webhook-signature");
  if (!id || !timestamp || !signatures) {
    return { ok: false, status: 400, error: "missing webhook-id, webhook-timestamp or webhook-signature" };
  }
  if (!/^\d+$/.test(timestamp) || Math.abs(nowSeconds - Number(timestamp)) > TOLERANCE_SECONDS) {
    return { ok: false, status: 401, error: "webhook-timestamp is not within 5 minutes of now" };
  }
  const key = await crypto.subtle.importKey("raw", keyBytes(secret), { name: "HMAC", hash: "SHA-256" }, false, [
    "verify",
  ]);
  const signed = concat(encoder.encode(`${id}.${timestamp}.`), body);
  for (const candidate of signatures.split(" ")) {
    const comma = candidate.indexOf(",");
    if (comma < 0 || candidate.slice(0, comma) !== "v1") continue;
    let mac: Uint8Array<ArrayBuffer>;
    try {
      mac = base64ToBytes(candidate.slice(comma + 1));
    } catch {
      continue;
    }
    // crypto.subtle.verify recomputes the HMAC and compares it in constant time.
    if (await crypto.subtle.verify("HMAC", key, mac, signed)) return { ok: true };
  }
  return { ok: false, status: 401, error: "no signature matches the body" };
}
