"""The model server: `backline serve`.

policy.py    which queued requests form the next batch (pure: a clock is passed in)
engine.py    the loop that runs batches: features, then score, then answer
model.py     the served version: loaded, warmed, swapped when its alias moves
app.py       the ASGI app: parses, answers, and nothing else
predlog.py   the prediction log: scored requests appended to the offline store
metrics.py   Prometheus metrics (multiprocess across --workers)
server.py    uvicorn, workers, SIGTERM drain
"""
