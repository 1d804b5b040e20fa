/**
 * Runs convex/webhookSignature.ts in Node for parascribe's Python tests: reads
 * {secret, headers, body_b64, now} as JSON on stdin and prints the verdict as JSON.
 *   npx esbuild scripts/verify-cli.ts --bundle --platform=node --outfile=/tmp/verify.cjs && node /tmp/verify.cjs
 */
import { verifyWebhook } from "../convex/webhookSignature";

type Input = { secret: string; headers: Record<string, string>; body_b64: string; now: number };

async function main(): Promise<void> {
  const chunks: Buffer[] = [];
  for await (const chunk of process.stdin) chunks.push(chunk as Buffer);
  const cases = JSON.parse(Buffer.concat(chunks).toString("utf8")) as Input[];
  const out = [];
  for (const c of cases) {
    const headers = new Headers(c.headers);
    out.push(await verifyWebhook(c.secret, headers, new Uint8Array(Buffer.from(c.body_b64, "base64")), c.now));
  }
  process.stdout.write(JSON.stringify(out));
}

void main();
