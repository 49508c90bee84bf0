# Stand-in for tensorrtllm_backend's python-backend model.py (not run in contract tests).
