"""The calc API on peer servers (uvicorn, hypercorn, granian, gunicorn) next to calc v10."""
