"""``nanobard serve``: the live explorer. models.py opens the models once and shares them, app.py
is the Starlette app (the page and the JSON API), server.py runs it with uvicorn."""
