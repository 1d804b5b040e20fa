terraform {
  required_version = ">= 1.5"

  required_providers {
    google = {
      source = "hashicorp/google"
      # 6.49 is the first release with google_cloud_run_v2_worker_pool scaling and GPU fields used in run.tf.
      version = ">= 6.49, < 8"
    }
  }

  # Partial configuration: `terraform init -backend-config=bucket=<state bucket>`.
  backend "gcs" {}
}

provider "google" {
  project = var.project_id
  region  = var.region
}
