"""Terraform, the dashboard, Cloud Build and the router package agree with the Python definitions.

Without credentials there is no ``terraform plan``; instead the HCL is parsed
(python-hcl2), the variable-only locals are evaluated by the real Terraform CLI
against the generated names file, and the dashboard is rendered as Terraform's
``templatefile`` would render it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from parascribe import metric_names, names
from parascribe.config import Settings, load_settings
from parascribe.router.planner import PlannerOptions

ROOT = Path(__file__).resolve().parents[2]
INFRA = ROOT / "infra"
TFVARS = INFRA / "names.auto.tfvars.json"
DASHBOARD = INFRA / "dashboards" / "parascribe.json"
# Environment variables that configure the platform rather than parascribe.
PLATFORM_ENV = {"GUNICORN_CMD_ARGS"}
TF_ENV = {**os.environ, "CHECKPOINT_DISABLE": "1", "TF_IN_AUTOMATION": "1", "TF_CLI_CONFIG_FILE": os.devnull}


def _script(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"infra_{name}", INFRA / "scripts" / f"{name}.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


gen_names = _script("gen_names")
package_router = _script("package_router")


def _tfvars() -> dict[str, Any]:
    return json.loads(TFVARS.read_text())


def _tf_text() -> str:
    return "\n".join(p.read_text() for p in sorted(INFRA.glob("*.tf")))


# --- names.auto.tfvars.json -------------------------------------------------------


def test_names_file_is_up_to_date() -> None:
    assert TFVARS.read_text() == gen_names.render(), "run `make infra-names` (infra/scripts/gen_names.py)"


def test_names_file_holds_every_python_name() -> None:
    tv = _tfvars()
    assert sorted(tv["topics"].values()) == sorted(names.TOPICS)
    assert sorted(tv["buckets"].values()) == sorted(names.BUCKETS)
    assert sorted(tv["metric_types"].values()) == sorted(metric_names.ALL)
    assert set(tv["metric_value_types"]) == set(tv["metric_types"])
    for sub in names.SUBSCRIPTIONS:
        assert tv["subscriptions"][sub.name] == {
            "topic": sub.topic, "push_path": sub.push_path, "service": sub.service,
            "ack_deadline_s": sub.ack_deadline_s, "max_delivery_attempts": sub.max_delivery_attempts,
            "dead_letter": sub.dead_letter,
        }


def test_gen_names_check_flags_a_stale_file(tmp_path: Path) -> None:
    stale = tmp_path / "names.auto.tfvars.json"
    stale.write_text(TFVARS.read_text().replace(names.TOPIC_ASR_GPU, "asr-gpu-old"))
    assert gen_names.main(["--check", "--out", str(stale)]) == 1
    assert gen_names.main(["--out", str(stale)]) == 0
    assert gen_names.main(["--check", "--out", str(stale)]) == 0


def test_every_role_the_terraform_names_exists() -> None:
    tv, text = _tfvars(), _tf_text()
    for kind, pattern in {
        "topics": r"var\.topics\.(\w+)",
        "buckets": r'google_storage_bucket\.buckets\["(\w+)"\]',
    }.items():
        used = set(re.findall(pattern, text))
        assert used, kind
        assert used <= set(tv[kind]), f"{kind}: {sorted(used - set(tv[kind]))} not in names.auto.tfvars.json"
    grant_roles = set(re.findall(r'topic = "(\w+)" }', text)) | set(re.findall(r'bucket = "(\w+)", role', text))
    assert grant_roles <= set(tv["topics"]) | set(tv["buckets"])


# --- HCL structure -----------------------------------------------------------------


@pytest.fixture(scope="module")
def hcl() -> dict[str, Any]:
    """All infra/*.tf parsed: resources by (type, name), merged locals, variables."""
    hcl2 = pytest.importorskip("hcl2", reason="python-hcl2 (dev extra) is needed to parse the Terraform")
    opts = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False, with_comments=False)
    out: dict[str, Any] = {"resource": {}, "locals": {}, "variable": {}}
    for path in sorted(INFRA.glob("*.tf")):
        doc = hcl2.loads(path.read_text(), serialization_options=opts)
        for block in doc.get("resource", []):
            for rtype, named in block.items():
                for rname, body in named.items():
                    out["resource"][(rtype, rname)] = body
        for block in doc.get("locals", []):
            out["locals"].update(block)
        for block in doc.get("variable", []):
            out["variable"].update(block)
    return out


def _dynamic(body: dict[str, Any], name: str) -> dict[str, Any]:
    return next(d[name] for d in body["dynamic"] if name in d)


def test_topics_buckets_and_subscriptions_come_from_the_names_file(hcl: dict[str, Any]) -> None:
    res = hcl["resource"]
    topic = res[("google_pubsub_topic", "topics")]
    assert topic["for_each"] == "${toset(values(var.topics))}" and topic["name"] == "${each.value}"
    sub = res[("google_pubsub_subscription", "subs")]
    assert sub["for_each"] == "${var.subscriptions}" and sub["name"] == "${each.key}"
    assert sub["topic"] == "${google_pubsub_topic.topics[each.value.topic].id}"
    assert sub["ack_deadline_seconds"] == "${each.value.ack_deadline_s}"
    bucket = res[("google_storage_bucket", "buckets")]
    assert bucket["for_each"] == "${var.buckets}" and bucket["name"] == "${local.bucket_names[each.key]}"
    assert bucket["uniform_bucket_level_access"] is True
    notification = res[("google_storage_notification", "uploads")]
    assert notification["payload_format"] == "JSON_API_V1" and notification["event_types"] == ["OBJECT_FINALIZE"]
    assert notification["topic"] == "${google_pubsub_topic.topics[var.topics.audio_uploaded].id}"


def test_subscriptions_dead_letter_and_retry(hcl: dict[str, Any]) -> None:
    sub = hcl["resource"][("google_pubsub_subscription", "subs")]
    dlp = _dynamic(sub, "dead_letter_policy")
    assert dlp["for_each"] == "${each.value.dead_letter ? [each.value.max_delivery_attempts] : []}"
    assert dlp["content"][0]["dead_letter_topic"] == "${google_pubsub_topic.topics[var.topics.dead_letter].id}"
    assert sub["retry_policy"][0]["maximum_backoff"] == "${var.retry_maximum_backoff}"
    # Every subscription but the dead-letter topic's own carries the policy, within Pub/Sub's 5..100.
    for s in names.SUBSCRIPTIONS:
        if s.topic == names.TOPIC_DEAD_LETTER:
            assert not s.dead_letter
        else:
            assert s.dead_letter and 5 <= s.max_delivery_attempts <= 100, s.name
    agent_subs = hcl["resource"][("google_pubsub_subscription_iam_member", "pubsub_agent_acks_dead_letters")]
    assert "if s.dead_letter" in agent_subs["for_each"]


def test_push_endpoints_follow_names_push_paths(hcl: dict[str, Any]) -> None:
    push = _dynamic(hcl["resource"][("google_pubsub_subscription", "subs")], "push_config")
    content = push["content"][0]
    assert content["push_endpoint"] == "${local.push_urls[push_config.value.service]}${push_config.value.push_path}"
    assert content["oidc_token"][0]["service_account_email"] == "${google_service_account.push.email}"
    pushed = {s.service for s in names.SUBSCRIPTIONS if s.push_path}
    assert set(hcl["locals"]["push_urls"]) == pushed
    assert set(hcl["locals"]["invoked_services"]) == pushed
    assert all(s.push_path.startswith("/") for s in names.SUBSCRIPTIONS if s.push_path)


def test_secrets_reach_services_only_through_secret_manager(hcl: dict[str, Any]) -> None:
    secret_fields = {n.upper() for n, f in Settings.model_fields.items() if "SecretStr" in str(f.annotation)}
    assert {"DEEPGRAM_API_KEY", "CONVEX_WEBHOOK_SECRET"} <= secret_fields
    plain = json.dumps(hcl["locals"]["env"]) + hcl["locals"]["env_common"] + hcl["locals"]["env_webhook"]
    assert not any(f in plain for f in secret_fields)
    # Every HTTP service (the Deepgram worker, the merger, the API) takes its own secrets, by reference.
    assert set(hcl["locals"]["http_services"]) == {"deepgram_worker", "merger", "api"}
    containers = _http_service(hcl)["template"][0]["containers"][0]
    secret_env = [d["env"] for d in containers["dynamic"] if "secret_key_ref" in json.dumps(d)]
    assert secret_env and secret_env[0]["for_each"] == "${local.secret_env[each.key]}"
    assert "${google_secret_manager_secret.secrets[env.value].secret_id}" in json.dumps(secret_env)


def test_env_names_are_settings() -> None:
    fields = {n.upper() for n in Settings.model_fields}
    keys = set(re.findall(r"^\s*([A-Z][A-Z0-9_]+)\s*=", _tf_text(), re.M))
    assert keys, "no environment variables found in the Terraform"
    assert keys - PLATFORM_ENV <= fields, f"not settings in config.py: {sorted(keys - PLATFORM_ENV - fields)}"


def test_gpu_worker_shape(hcl: dict[str, Any]) -> None:
    pool = hcl["resource"][("google_cloud_run_v2_worker_pool", "asr_worker")]
    assert pool["template"][0]["node_selector"][0]["accelerator"] == "${var.gpu_type}"
    assert hcl["variable"]["gpu_type"]["default"] == "nvidia-l4"
    assert pool["scaling"][0]["manual_instance_count"] == "${var.asr_worker_instances}"
    service = hcl["resource"][("google_cloud_run_v2_service", "asr_worker")]
    resources = service["template"][0]["containers"][0]["resources"][0]
    assert resources["cpu_idle"] is False
    assert hcl["locals"]["gpu_instance"] == {"cpu": 4, "memory_gib": 16}
    assert service["template"][0]["scaling"][0]["min_instance_count"] == "${var.asr_worker_instances}"


def test_router_function(hcl: dict[str, Any]) -> None:
    fn = hcl["resource"][("google_cloudfunctions2_function", "router")]
    assert fn["build_config"][0]["runtime"] == "python311"
    assert fn["build_config"][0]["entry_point"] == "handle_upload"
    assert "event_trigger" not in fn, "the router is triggered by the router-push subscription"


# --- least privilege ----------------------------------------------------------------


def _granted_to(hcl: dict[str, Any], member: str) -> dict[tuple[str, str], dict[str, Any]]:
    """Every IAM resource whose member is ``member`` (a Terraform reference)."""
    return {key: body for key, body in hcl["resource"].items()
            if key[0].endswith("_iam_member") and body.get("member") == f"${{{member}}}"}


def _http_service(hcl: dict[str, Any]) -> dict[str, Any]:
    """The one resource behind the Deepgram worker, the merger and the API (``for_each`` over their shapes)."""
    body: dict[str, Any] = hcl["resource"][("google_cloud_run_v2_service", "http")]
    assert body["for_each"] == "${local.http_services}"
    return body


def _env_entries(hcl: dict[str, Any], service: str) -> dict[str, str]:
    """The literal ``NAME = value`` pairs of one service's environment in ``local.env``."""
    return dict(re.findall(r"([A-Z][A-Z0-9_]+) = ([^,}]+)", hcl["locals"]["env"][service]))


def test_bucket_grants_are_least_privilege(hcl: dict[str, Any]) -> None:
    rows = [(g["service"], g["bucket"], g["role"]) for g in hcl["locals"]["bucket_grants"]]
    assert len(set(rows)) == len(rows), "no grant twice"
    grants: dict[tuple[str, str], set[str]] = {}
    for service, bucket, role in rows:
        grants.setdefault((service, bucket), set()).add(role)
    viewer, user, creator = "roles/storage.objectViewer", "roles/storage.objectUser", "roles/storage.objectCreator"
    assert grants == {
        ("router", "uploads"): {viewer},
        ("router", "state"): {user},              # manifest, published marker, failed status (CAS writes)
        ("asr_worker", "uploads"): {viewer},
        ("asr_worker", "state"): {viewer},        # reads a job's status to skip chunks of failed jobs
        ("asr_worker", "models"): {viewer},
        ("deepgram_worker", "uploads"): {viewer},
        ("deepgram_worker", "state"): {viewer},   # the same read; neither worker writes state
        ("merger", "state"): {user},
        # Written once with ifGenerationMatch=0; a repeat must get 412, not 403 (needs storage.objects.delete).
        ("merger", "transcripts"): {user},
        # Creates api/<request_id>/ objects (copies, upload sessions), reads them back for their generation;
        # never deletes or replaces one, so no objectUser there.
        ("api", "uploads"): {creator, viewer},
        ("api", "state"): {user},                 # requests/ records: created once, then CAS
        ("api", "transcripts"): {viewer},         # its signed URLs read as the API's account
        ("ingest_worker", "uploads"): {creator},  # the fetched track, once, under a fresh name
        ("ingest_worker", "state"): {user},       # moves requests/ records along (CAS)
    }
    binding = hcl["resource"][("google_storage_bucket_iam_member", "service")]
    assert binding["role"] == "${each.value.role}" and "local.bucket_grants" in binding["for_each"]


def test_publish_grants_are_least_privilege(hcl: dict[str, Any]) -> None:
    grants = {(g["service"], g["topic"]) for g in hcl["locals"]["publish_grants"]}
    assert grants == {
        ("router", "asr_gpu"), ("router", "asr_deepgram"), ("router", "asr_results"),
        ("asr_worker", "asr_results"), ("asr_worker", "asr_deepgram"),
        ("deepgram_worker", "asr_results"),
        ("merger", "asr_deepgram"),  # the dead-letter handler only sends GPU tasks to Deepgram
        ("api", "ingest_requests"),  # URLs for the ingest worker
        ("api", "asr_results"),      # a cancelled job's JobFailed; it publishes nothing else
    }
    api_code = "\n".join(p.read_text() for p in (ROOT / "shared" / "parascribe" / "api").glob("*.py"))
    assert sorted(re.findall(r"publish\((names\.\w+)", api_code)) == ["names.TOPIC_ASR_RESULTS",
                                                                       "names.TOPIC_INGEST_REQUESTS"]
    merger_code = "\n".join(p.read_text() for p in (ROOT / "shared" / "parascribe" / "merger").glob("*.py"))
    assert "publish(names.TOPIC_ASR_DEEPGRAM" in merger_code
    assert not re.search(r"publish\(\s*names\.TOPIC_ASR_GPU", merger_code), "the merger publishes to asr-gpu: grant it"


def test_function_build_account_has_only_what_a_gen2_build_needs(hcl: dict[str, Any]) -> None:
    res = hcl["resource"]
    grants = _granted_to(hcl, "google_service_account.function_build.member")
    assert {(key, body["role"]) for key, body in grants.items()} == {
        (("google_project_iam_member", "function_build_logs"), "roles/logging.logWriter"),
        (("google_storage_bucket_iam_member", "function_build_reads_source"), "roles/storage.objectViewer"),
        (("google_project_iam_member", "function_build_reads_staged_source"), "roles/storage.objectViewer"),
        (("google_artifact_registry_repository_iam_member", "function_build_pushes"),
         "roles/artifactregistry.writer"),
    }
    assert "for_each" not in json.dumps(list(grants.values())) and "cloudbuild.builds.builder" not in _tf_text()
    # Project-wide only for logs; the source bucket and the repository by name; the GCF staging bucket by condition.
    assert "condition" not in grants[("google_project_iam_member", "function_build_logs")]
    assert grants[("google_storage_bucket_iam_member", "function_build_reads_source")]["bucket"] == (
        "${google_storage_bucket.build.name}")
    staged = grants[("google_project_iam_member", "function_build_reads_staged_source")]["condition"][0]
    assert staged["expression"] == 'resource.name.startsWith("projects/_/buckets/${local.function_sources_bucket}")'
    assert hcl["locals"]["function_sources_bucket"] == (
        "gcf-v2-sources-${data.google_project.this.number}-${var.region}")
    repo_grant = grants[("google_artifact_registry_repository_iam_member", "function_build_pushes")]
    assert repo_grant["repository"] == "${google_artifact_registry_repository.functions.name}"
    build = res[("google_cloudfunctions2_function", "router")]["build_config"][0]
    assert build["service_account"] == "${google_service_account.function_build.id}"
    assert build["docker_repository"] == "${google_artifact_registry_repository.functions.id}"
    repo = res[("google_artifact_registry_repository", "functions")]
    assert repo["repository_id"] != res[("google_artifact_registry_repository", "images")]["repository_id"]
    depends = res[("google_cloudfunctions2_function", "router")]["depends_on"]
    assert {f"${{{t}.{n}}}" for t, n in grants} <= set(depends), "the build must wait for its grants"


def test_sweeper_schedule_calls_the_merger_with_its_own_identity(hcl: dict[str, Any]) -> None:
    res = hcl["resource"]
    account = res[("google_service_account", "scheduler")]
    assert account["account_id"] == "parascribe-scheduler"
    grants = _granted_to(hcl, "google_service_account.scheduler.member")
    assert list(grants) == [("google_cloud_run_v2_service_iam_member", "scheduler_invokes_merger")]
    invoker = grants[("google_cloud_run_v2_service_iam_member", "scheduler_invokes_merger")]
    assert invoker["role"] == "roles/run.invoker" and invoker["name"] == '${google_cloud_run_v2_service.http["merger"].name}'
    assert "google_service_account.scheduler" not in json.dumps(
        {str(k): v for k, v in res.items() if k[0].startswith("google_project_iam")})

    job = res[("google_cloud_scheduler_job", "sweep")]
    assert job["schedule"] == "${var.sweep_schedule}" and hcl["variable"]["sweep_schedule"]["default"] == "*/5 * * * *"
    assert job["region"] == "${var.region}"
    target = job["http_target"][0]
    assert target["http_method"] == "POST"
    assert target["uri"] == '${google_cloud_run_v2_service.http["merger"].uri}/sweep'
    oidc = target["oidc_token"][0]
    assert oidc["service_account_email"] == "${google_service_account.scheduler.email}"
    assert oidc["audience"] == '${google_cloud_run_v2_service.http["merger"].uri}'
    assert job["attempt_deadline"] == "${local.ack_deadline_s.merger}s", "no longer than the merger's request timeout"
    assert "${google_cloud_run_v2_service_iam_member.scheduler_invokes_merger}" in job["depends_on"]

    apis = res[("google_project_service", "apis")]["for_each"]
    assert "cloudscheduler.googleapis.com" in apis
    assert _env_entries(hcl, "merger")["SWEEP_GRACE_MINUTES"] == "tostring(var.sweep_grace_minutes)"
    assert hcl["variable"]["sweep_grace_minutes"]["default"] == 30


def test_deepgram_worker_source_cache_fits_its_memory(hcl: dict[str, Any]) -> None:
    env = _env_entries(hcl, "deepgram_worker")
    assert env["SOURCE_CACHE_MB"] == "tostring(var.deepgram_source_cache_mb)"
    cache_mb = hcl["variable"]["deepgram_source_cache_mb"]["default"]
    memory_mb = {"1Gi": 1024, "2Gi": 2048}[hcl["locals"]["http_services"]["deepgram_worker"]["memory"]]
    # /tmp is memory on Cloud Run: the cache must leave room for the requests in flight.
    assert cache_mb == 256 and cache_mb <= memory_mb // 4
    validation = hcl["variable"]["deepgram_source_cache_mb"]["validation"][0]["condition"]
    assert "<= 512" in validation, "the largest allowed cache is half of the worker's memory"


def test_the_api_is_public_by_key_and_signs_as_itself(hcl: dict[str, Any]) -> None:
    http = _http_service(hcl)
    # Reached with API keys, not Google identities: no invoker check, and no allUsers grant anywhere.
    # The API is the one public service; the others take internal traffic and keep the invoker check.
    assert {k for k, v in hcl["locals"]["http_services"].items() if v["public"]} == {"api"}
    assert http["ingress"] == '${each.value.public ? "INGRESS_TRAFFIC_ALL" : "INGRESS_TRAFFIC_INTERNAL_ONLY"}'
    assert http["invoker_iam_disabled"] == "${each.value.public ? true : null}"
    assert not re.search(r'member\s*=\s*"(allUsers|allAuthenticatedUsers)"', _tf_text())
    assert http["template"][0]["service_account"] == "${google_service_account.service[each.key].email}"
    assert http["template"][0]["containers"][0]["image"] == "${local.images[each.key]}"
    assert hcl["locals"]["secrets"]["api_key_hashes"] == "api-key-hashes"
    grants = _granted_to(hcl, 'google_service_account.service["api"].member')
    assert {(k, b["role"]) for k, b in grants.items()} == {
        (("google_service_account_iam_member", "api_signs_urls"), "roles/iam.serviceAccountTokenCreator")}
    assert grants[("google_service_account_iam_member", "api_signs_urls")]["service_account_id"] == (
        '${google_service_account.service["api"].name}'), "it may sign as itself, and as no other account"
    assert "api" not in {s.service for s in names.SUBSCRIPTIONS}, "the API pulls nothing"


def test_ingest_worker_is_an_always_on_pull_worker(hcl: dict[str, Any]) -> None:
    svc = hcl["resource"][("google_cloud_run_v2_service", "ingest_worker")]
    template = svc["template"][0]
    assert svc["ingress"] == "INGRESS_TRAFFIC_INTERNAL_ONLY" and "invoker_iam_disabled" not in svc
    assert template["scaling"][0]["min_instance_count"] == "${var.ingest_worker_instances}"
    assert hcl["variable"]["ingest_worker_instances"]["default"] >= 1, "a streaming pull needs a running instance"
    resources = template["containers"][0]["resources"][0]
    assert resources["cpu_idle"] is False and "nvidia.com/gpu" not in resources["limits"]
    assert template["service_account"] == '${google_service_account.service["ingest_worker"].email}'
    assert not _granted_to(hcl, 'google_service_account.service["ingest_worker"].member'), (
        "its only grants are the generic ones: buckets, the ingest-pull subscription, logs and metrics")
    assert _env_entries(hcl, "ingest_worker")["INGEST_MAX_MB"] == "tostring(var.ingest_max_mb)"


def test_every_granted_role_is_explained_in_the_infra_readme() -> None:
    readme = (INFRA / "README.md").read_text()
    roles = set(re.findall(r'"roles/([\w.]+)"', _tf_text()))
    assert {"storage.objectViewer", "run.invoker", "artifactregistry.writer"} <= roles
    assert not {r for r in roles if f"`{r}`" not in readme}, "infra/README.md must explain every role granted"


# --- Terraform CLI: format and evaluated locals --------------------------------------


def _terraform() -> str:
    tf = shutil.which("terraform")
    if tf is None:
        pytest.skip("terraform CLI not installed: format and locals evaluation need it (HCL checks still ran)")
    return tf


def test_terraform_fmt() -> None:
    proc = subprocess.run([_terraform(), "fmt", "-check", "-recursive", str(INFRA)],
                          capture_output=True, text=True, env=TF_ENV, timeout=60)
    assert proc.returncode == 0, f"terraform fmt would change: {proc.stdout}"


@pytest.fixture(scope="module")
def tf_eval(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., dict[str, Any]]:
    """Evaluate the locals that depend only on variables, with the real Terraform, offline."""
    tf = _terraform()
    work = tmp_path_factory.mktemp("tf_eval")
    shutil.copy(INFRA / "variables.tf", work)
    shutil.copy(TFVARS, work)
    blocks = [m.group(0) for p in sorted(INFRA.glob("*.tf"))
              for m in re.finditer(r"^locals \{\n.*?^\}\n", p.read_text(), re.S | re.M)]
    blocks = [b for b in blocks if not re.search(r"\b(google_\w+|data)\.", b)]
    wanted = ["env", "secret_env", "bucket_names", "service_names", "images", "ack_deadline_s",
              "deepgram_max_instances", "pull_subscriptions", "dead_letter_subscription", "http_services"]
    output = "\n".join(f'output "{w}" {{\n  value = local.{w}\n}}' for w in wanted)
    (work / "eval.tf").write_text("\n".join(blocks) + "\n" + output + "\n")
    subprocess.run([tf, "init", "-input=false"], cwd=work, env=TF_ENV, check=True, capture_output=True, timeout=120)

    def run(**variables: object) -> dict[str, Any]:
        args = {"project_id": "proj", "bucket_prefix": "acme", **variables}
        proc = subprocess.run(
            [tf, "apply", "-auto-approve", "-input=false", "-state", str(work / "eval.tfstate"),
             *(f"-var={k}={v}" for k, v in args.items())],
            cwd=work, env=TF_ENV, capture_output=True, text=True, timeout=120,
        )
        if proc.returncode != 0:
            raise AssertionError(proc.stderr or proc.stdout)
        out = subprocess.run([tf, "output", "-json", "-state", str(work / "eval.tfstate")],
                             cwd=work, env=TF_ENV, capture_output=True, text=True, check=True, timeout=60)
        return {k: v["value"] for k, v in json.loads(out.stdout).items()}

    return run


def test_service_environments_are_valid_settings(tf_eval: Callable[..., dict[str, Any]]) -> None:
    for webhook in ("", "https://example.convex.site/parascribe"):
        out = tf_eval(convex_webhook_url=webhook)
        assert set(out["env"]) == set(out["secret_env"]) == set(out["service_names"])
        for svc, env in out["env"].items():
            values = {k.lower(): v for k, v in env.items() if k not in PLATFORM_ENV}
            values.update({k.lower(): "from-secret-manager" for k in out["secret_env"][svc]})
            settings = load_settings(**values)
            assert settings.bucket_prefix == "acme" and settings.metrics_exporter == "cloud"
        assert ("CONVEX_WEBHOOK_SECRET" in out["secret_env"]["merger"]) == bool(webhook)
    assert out["secret_env"]["deepgram_worker"] == {"DEEPGRAM_API_KEY": "deepgram_api_key"}
    assert out["env"]["router"]["GPU_MAX_INSTANCES"] == "1", "the planner counts the worker pool's instances"
    service = tf_eval(asr_worker_mode="service", asr_worker_max_instances=4)
    assert service["env"]["router"]["GPU_MAX_INSTANCES"] == "4", "in service mode, the most it may scale to"
    gpu = load_settings(**{k.lower(): v for k, v in out["env"]["asr_worker"].items()})
    assert (gpu.gpu_instance_vcpus, gpu.gpu_instance_memory_gib) == (4, 16)
    assert gpu.gpu_price_per_second == load_settings().gpu_price_per_second


def test_evaluated_names_match_python(tf_eval: Callable[..., dict[str, Any]]) -> None:
    out = tf_eval()
    assert out["bucket_names"] == {role: names.bucket_name(base, "acme") for role, base in _tfvars()["buckets"].items()}
    assert out["pull_subscriptions"] == {"asr_worker": names.SUB_ASR_GPU, "ingest_worker": names.SUB_INGEST}
    assert out["service_names"]["api"] == "api" and out["service_names"]["ingest_worker"] == "ingest-worker"
    assert out["secret_env"]["api"] == {"API_KEY_HASHES": "api_key_hashes"}
    assert out["images"]["api"] == "us-central1-docker.pkg.dev/proj/parascribe/api:latest"
    assert "API_PUBLIC_URL" not in out["env"]["api"]
    assert tf_eval(api_public_url="https://api.example.com")["env"]["api"]["API_PUBLIC_URL"] == (
        "https://api.example.com")
    assert out["dead_letter_subscription"] == names.SUB_DEAD_LETTER
    by_service: dict[str, int] = {}
    for s in names.SUBSCRIPTIONS:
        by_service[s.service] = max(by_service.get(s.service, 0), s.ack_deadline_s)
    assert out["ack_deadline_s"] == by_service
    assert out["images"]["merger"] == "us-central1-docker.pkg.dev/proj/parascribe/merger:latest"


@pytest.mark.parametrize("concurrency", [1, 10, 16, 33, 100])
def test_deepgram_instances_times_concurrency_within_limit(
    tf_eval: Callable[..., dict[str, Any]], concurrency: int
) -> None:
    out = tf_eval(deepgram_worker_concurrency=concurrency)
    assert 1 <= out["deepgram_max_instances"] * concurrency <= 100
    assert out["env"]["deepgram_worker"]["DEEPGRAM_MAX_CONCURRENCY"] == str(concurrency)
    # The planner's Deepgram path holds as many requests in flight as the deployed workers do.
    router = PlannerOptions.from_settings(load_settings(**{k.lower(): v for k, v in out["env"]["router"].items()}))
    assert router.deepgram_slots == out["deepgram_max_instances"] * concurrency


def test_http_services_evaluate_to_their_shapes_and_keep_their_state(
        tf_eval: Callable[..., dict[str, Any]]) -> None:
    out = tf_eval(deepgram_worker_concurrency=25, merger_max_instances=7, api_max_instances=3)
    shapes = out["http_services"]
    assert set(shapes) <= set(out["service_names"]) and set(shapes) <= set(out["images"])
    assert shapes["deepgram_worker"] == {"public": False, "cpu": "1", "memory": "1Gi", "concurrency": 25,
                                         "max_instances": 4, "timeout_s": out["ack_deadline_s"]["deepgram_worker"]}
    assert (shapes["merger"]["max_instances"], shapes["merger"]["timeout_s"]) == (7, out["ack_deadline_s"]["merger"])
    assert (shapes["api"]["public"], shapes["api"]["max_instances"], shapes["api"]["timeout_s"]) == (True, 3, 60)
    # The three were separate resources before: a `moved` block for each keeps its state on apply.
    moved = re.findall(r"moved \{\s*from = google_cloud_run_v2_service\.(\w+)\s*"
                       r'to\s*= google_cloud_run_v2_service\.http\["(\w+)"\]\s*\}', _tf_text())
    assert sorted(moved) == sorted((k, k) for k in shapes)


def test_variable_validation_rejects_bad_input(tf_eval: Callable[..., dict[str, Any]]) -> None:
    with pytest.raises(AssertionError, match="bucket_prefix"):
        tf_eval(bucket_prefix="Not_Valid")
    with pytest.raises(AssertionError, match="100 concurrent"):
        tf_eval(deepgram_concurrency_limit=150)
    with pytest.raises(AssertionError, match="1 GiB of memory"):
        tf_eval(deepgram_source_cache_mb=1024)
    with pytest.raises(AssertionError, match="sweep_grace_minutes must be positive"):
        tf_eval(sweep_grace_minutes=0)
    with pytest.raises(AssertionError, match="4 GiB of memory"):
        tf_eval(ingest_max_mb=4096)


def test_evaluated_cache_and_sweep_settings(tf_eval: Callable[..., dict[str, Any]]) -> None:
    out = tf_eval()
    deepgram = load_settings(**{k.lower(): v for k, v in out["env"]["deepgram_worker"].items()})
    assert out["env"]["deepgram_worker"]["SOURCE_CACHE_MB"] == "256" and deepgram.source_cache_mb == 256
    merger = {k.lower(): v for k, v in out["env"]["merger"].items() if k not in PLATFORM_ENV}
    assert load_settings(**merger).sweep_grace_minutes == 30
    assert tf_eval(sweep_grace_minutes=45)["env"]["merger"]["SWEEP_GRACE_MINUTES"] == "45"


# --- dashboard and alerts -------------------------------------------------------------


def _render_dashboard() -> dict[str, Any]:
    """What Terraform's templatefile(path, {metric = var.metric_types}) produces."""
    types = _tfvars()["metric_types"]
    text = DASHBOARD.read_text()
    assert "%{" not in text
    rendered = re.sub(r"(?<!\$)\$\{metric\.(\w+)\}", lambda m: types[m.group(1)], text)
    assert re.search(r"(?<!\$)\$\{", rendered) is None, "unknown template placeholder"
    return json.loads(rendered.replace("$${", "${"))


def _filters(node: object) -> list[str]:
    if isinstance(node, dict):
        return [v for k, v in node.items() if k == "filter" and isinstance(v, str)] + [
            f for v in node.values() for f in _filters(v)]
    if isinstance(node, list):
        return [f for v in node for f in _filters(v)]
    return []


def test_dashboard_uses_only_known_metric_types() -> None:
    dash = _render_dashboard()
    types = [t for f in _filters(dash) for t in re.findall(r'metric\.type="([^"]+)"', f)]
    custom = {t for t in types if t.startswith("custom.googleapis.com/")}
    assert custom <= set(metric_names.ALL)
    assert {t for t in types if t not in custom} <= {
        "pubsub.googleapis.com/subscription/num_undelivered_messages",
        "pubsub.googleapis.com/subscription/oldest_unacked_message_age",
    }
    required = {metric_names.COST_USD, metric_names.SAVINGS_USD, metric_names.RTFX, metric_names.AUDIO_SECONDS,
                metric_names.JOB_LATENCY_SECONDS, metric_names.JOBS, metric_names.FALLBACKS,
                metric_names.WEBHOOK_FAILURES}
    assert required <= custom
    grouped = json.dumps(dash)
    for label in ("metric.label.method", "metric.label.status", "metric.label.reason", "metric.label.engine"):
        assert label in grouped


def test_dashboard_layout_fits_the_grid() -> None:
    layout = _render_dashboard()["mosaicLayout"]
    cells: set[tuple[int, int]] = set()
    for tile in layout["tiles"]:
        assert tile["xPos"] + tile["width"] <= layout["columns"]
        area = {(x, y) for x in range(tile["xPos"], tile["xPos"] + tile["width"])
                for y in range(tile.get("yPos", 0), tile.get("yPos", 0) + tile["height"])}
        assert not cells & area, f"tile {tile['widget']['title']!r} overlaps another"
        cells |= area


def test_alerts_cover_auth_errors_webhooks_and_dead_letters(hcl: dict[str, Any]) -> None:
    assert set(hcl["locals"]["counter_alerts"]) == {"deepgram_auth_errors", "webhook_failures"}
    assert set(hcl["locals"]["counter_alerts"]) <= set(_tfvars()["metric_types"])
    counter = hcl["resource"][("google_monitoring_alert_policy", "counter")]
    condition = counter["conditions"][0]["condition_threshold"][0]
    assert condition["comparison"] == "COMPARISON_GT" and condition["threshold_value"] == 0
    dlq = hcl["resource"][("google_monitoring_alert_policy", "dead_letter_backlog")]
    dlq_filter = dlq["conditions"][0]["condition_threshold"][0]["filter"]
    assert "num_undelivered_messages" in dlq_filter and "local.dead_letter_subscription" in dlq_filter
    descriptor = hcl["resource"][("google_monitoring_metric_descriptor", "alerted")]
    assert descriptor["value_type"] == "${var.metric_value_types[each.key]}"
    assert set(re.findall(r'"(\w+)"', descriptor["for_each"])) == set(hcl["locals"]["counter_alerts"])


# --- router package, merger image, Cloud Build ----------------------------------------------


def test_router_zip_is_complete_deterministic_and_importable(tmp_path: Path) -> None:
    if not (ROOT / "services" / "router" / "main.py").is_file():
        pytest.skip("services/router/main.py does not exist yet")
    first = package_router.build(tmp_path / "a.zip")
    second = package_router.build(tmp_path / "b.zip")
    assert first.read_bytes() == second.read_bytes()
    with zipfile.ZipFile(first) as zf:
        listed = zf.namelist()
        assert {"main.py", "requirements.txt", "parascribe/__init__.py", "parascribe/names.py"} <= set(listed)
        assert not [n for n in listed if "__pycache__" in n or n.endswith(".pyc")]
        reqs = zf.read("requirements.txt").decode()
        assert "@functions_framework.cloud_event" in zf.read("main.py").decode()
        zf.extractall(tmp_path / "src")
    assert re.search(r"^functions-framework\b", reqs, re.M | re.I)
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import main, parascribe; "
            "assert parascribe.__file__.startswith(sys.argv[1]), parascribe.__file__; "
            "assert callable(main.handle_upload)")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "src")], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr


def test_router_requirements_pin_from_constraints(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared" / "pyproject.toml").write_text(
        '[project]\nname = "x"\ndependencies = ["pydantic>=2", "av>=12"]\n')
    (tmp_path / "services" / "router").mkdir(parents=True)
    (tmp_path / "services" / "router" / "requirements.txt").write_text("# pinned\nAV==17.0.0\n")
    (tmp_path / "constraints.txt").write_text("pydantic==2.5.0\nav==18.1.0\n")
    assert package_router.requirements(tmp_path) == "AV==17.0.0\npydantic==2.5.0\n"


def test_merger_dockerfile() -> None:
    text = (ROOT / "services" / "merger" / "Dockerfile").read_text()
    assert re.search(r"^FROM python:3\.11-slim$", text, re.M)
    deps, code = text.index("COPY shared/pyproject.toml"), text.index("COPY shared/ ")
    assert deps < text.index("pip install -c") < code, "dependencies must be installed before the code is copied"
    assert re.search(r"gunicorn .*main:app", text)
    ignore = (ROOT / "services" / "merger" / "Dockerfile.dockerignore").read_text().splitlines()
    for source in re.findall(r"^COPY (.+) \S+$", text, re.M):
        for path in source.split():
            path = path.replace("requirements.tx[t]", "")
            allowed = [line[1:] for line in ignore if line.startswith("!")]
            assert any(path.startswith(a) or a.startswith(path) for a in allowed), f"{path} is excluded from the context"
    main = ROOT / "services" / "merger" / "main.py"
    if main.exists():
        assert re.search(r"^app\s*[:=]", main.read_text(), re.M), "services/merger/main.py must expose `app`"


def test_cloudbuild_builds_what_terraform_deploys(hcl: dict[str, Any]) -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read cloudbuild.yaml")
    build = yaml.safe_load((ROOT / "cloudbuild.yaml").read_text())
    steps = {s["id"]: s for s in build["steps"]}
    built = {}
    for step in steps.values():
        args = step.get("args", [])
        if args[:2] == ["build", "-f"]:
            assert args[-1] == ".", "images build from the repository root"
            built[args[2]] = args[args.index("-t") + 1]
    images = hcl["locals"]["images"]
    assert "asr_worker" in images and "deepgram_worker" in images and "merger" in images
    for svc in ("asr_worker", "deepgram_worker", "merger"):
        tag = built[f"services/{svc}/Dockerfile"]
        assert tag.startswith("${_REGION}-docker.pkg.dev/${PROJECT_ID}/${_REPO}/" + svc.replace("_", "-") + ":")
    assert build["substitutions"]["_REPO"] == hcl["variable"]["artifact_repository"]["default"]
    assert "pytest -q tests/unit" in steps["unit-tests"]["args"][-1]
    assert "gen_names.py --check" in steps["unit-tests"]["args"][-1]
    assert "package_router.py" in " ".join(steps["package-router"]["args"])
    deploy = steps["deploy"]["args"][-1]
    assert "-var-file=../build/images.tfvars.json" in deploy and "router_zip=../build/router.zip" in deploy


def test_deepgram_auth_errors_are_retried_for_hours_not_dead_lettered_after_five() -> None:
    from parascribe import names

    [sub] = [s for s in names.SUBSCRIPTIONS if s.name == names.SUB_ASR_DEEPGRAM]
    assert sub.dead_letter and sub.max_delivery_attempts == 100
