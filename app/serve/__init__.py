"""The service on Ray Serve: the same FastAPI app as a deployment, a replica per GPU (docs/scaling-out.md).

Nothing here is imported by `python -m app`: Ray is an optional install (requirements-ray.txt).
"""
