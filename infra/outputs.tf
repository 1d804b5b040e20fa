output "buckets" {
  description = "Deployed bucket names by role."
  value       = { for role, b in google_storage_bucket.buckets : role => b.name }
}

output "topics" {
  description = "Topic ids by name."
  value       = { for name, t in google_pubsub_topic.topics : name => t.id }
}

output "subscriptions" {
  description = "Subscription ids by name."
  value       = { for name, s in google_pubsub_subscription.subs : name => s.id }
}

output "push_urls" {
  description = "Base URL of each push target."
  value       = local.push_urls
}

output "asr_worker" {
  description = "The ASR worker's Cloud Run resource (worker pool or service)."
  value       = var.asr_worker_mode == "worker_pool" ? google_cloud_run_v2_worker_pool.asr_worker[0].id : google_cloud_run_v2_service.asr_worker[0].id
}

output "service_accounts" {
  description = "Service account e-mail by service, plus the push, sweeper and function build identities."
  value = merge({ for svc, sa in google_service_account.service : svc => sa.email }, {
    push           = google_service_account.push.email
    scheduler      = google_service_account.scheduler.email
    function_build = google_service_account.function_build.email
  })
}

output "sweep_job" {
  description = "Cloud Scheduler job that calls the merger's POST /sweep."
  value       = google_cloud_scheduler_job.sweep.id
}

output "image_repository" {
  description = "Where cloudbuild.yaml pushes images."
  value       = local.image_base
}

output "build_bucket" {
  description = "Bucket holding the router's source zips."
  value       = google_storage_bucket.build.name
}

output "dashboard_id" {
  description = "Cloud Monitoring dashboard id."
  value       = google_monitoring_dashboard.parascribe.id
}

output "api_url" {
  description = "The API's base URL (POST /v1/jobs, GET /docs)."
  value       = google_cloud_run_v2_service.http["api"].uri
}
