"""Reading `moec-run train --log LOG.jsonl`: the training rate.

moec-run writes one train record every --log-every steps, with the images/s
of the steps since the previous record; the first interval holds the
warm-up (first calls, page faults) and is left out when there are more.
"""
import json


def train_records(path):
    """The train records of a moec-run train log that carry a rate."""
    recs = []
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if r.get("split", "train") == "train" and r.get("images_per_s"):
                recs.append(r)
    return recs


def train_rate(recs, batch):
    """(images/s, timed steps) over the records after the first interval."""
    prev, parts = 0, []
    for r in recs:
        steps = r["step"] - prev
        prev = r["step"]
        parts.append((steps, steps * batch / r["images_per_s"]))
    if len(parts) > 1:
        parts = parts[1:]
    steps = sum(p[0] for p in parts)
    secs = sum(p[1] for p in parts)
    return (steps * batch / secs if secs else None), steps
