"""The web console and JSON API served beside /healthz on `http.listen` (see app.py)."""
