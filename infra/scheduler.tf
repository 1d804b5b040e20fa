# The sweeper: Cloud Scheduler calls the merger's POST /sweep every few minutes.
# The merger fails any job past its deadline plus SWEEP_GRACE_MINUTES and completes
# claims whose owner died, so no job is left running when every message about it
# has been lost or acked.

# Identity in the scheduler's OIDC token; it may invoke the merger and nothing else.
resource "google_service_account" "scheduler" {
  account_id   = "parascribe-scheduler"
  display_name = "parascribe sweeper (Cloud Scheduler)"
}

resource "google_cloud_run_v2_service_iam_member" "scheduler_invokes_merger" {
  location = var.region
  name     = google_cloud_run_v2_service.http["merger"].name
  role     = "roles/run.invoker"
  member   = google_service_account.scheduler.member
}

resource "google_cloud_scheduler_job" "sweep" {
  name        = "parascribe-sweep"
  description = "POST /sweep on the merger: fail jobs past deadline + grace, resume abandoned claims"
  region      = var.region
  schedule    = var.sweep_schedule
  time_zone   = "Etc/UTC"
  # The merger answers within its request timeout; a sweep cut short resumes on the next run.
  attempt_deadline = "${local.ack_deadline_s.merger}s"

  # No retries: the next run comes within minutes, and a sweep is idempotent.
  retry_config {
    retry_count = 0
  }

  http_target {
    http_method = "POST"
    uri         = "${google_cloud_run_v2_service.http["merger"].uri}/sweep"
    body        = base64encode("{}")
    headers = {
      "Content-Type" = "application/json"
    }
    oidc_token {
      service_account_email = google_service_account.scheduler.email
      audience              = google_cloud_run_v2_service.http["merger"].uri
    }
  }

  depends_on = [google_project_service.apis, google_cloud_run_v2_service_iam_member.scheduler_invokes_merger]
}
