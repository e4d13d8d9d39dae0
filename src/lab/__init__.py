"""lab: run a Kubernetes Deployment on one machine with real processes, HAProxy, InfluxDB, k6."""
