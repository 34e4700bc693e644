"""Operations: what runs bluepri on a cluster and watches it (KubeRay manifests and their
checks, the generated RayService config, Grafana dashboards and their PromQL checks).

Nothing here imports torch; the checks run in `make test` without Ray.
"""
