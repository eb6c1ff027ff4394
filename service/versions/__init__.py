"""Model versions in TF Serving's layout, served side by side and replaced without a restart (docs/versions.md)."""
