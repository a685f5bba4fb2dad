"""Strict JSON (RFC 8259) for everything loralab writes or serves, decided in one place.

Python's json writes NaN and Infinity, which browsers, jq, Go and Java reject. A value that is not a
finite number (a correlation of constant values, a loss that diverged) is written as null, with the
reason beside it under `<key>_undefined`; reading the file back turns it into NaN again, so the code
between stays in floats.
"""

from __future__ import annotations

import json
import math

UNDEFINED = "_undefined"
# Why a metric can be undefined on a set of rows; any other value: not a finite number.
REASONS = {
    "pearson": "the targets or the predictions are constant on these rows",
    "spearman": "the targets or the predictions are constant on these rows",
}


def reason(key: str, metric: str | None = None) -> str:
    """Why `key` can be undefined; `metric`: the metric of the object it stands in (a summary's `peak`)."""
    base = key.removesuffix("_95ci").removeprefix("val/")
    return REASONS.get(base, REASONS.get(metric, "not a finite number"))


def _bad(value) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def strict(value):
    """`value` with every non-finite float as None, and `<key>_undefined: reason` beside each such key."""
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            out[key] = strict(item)
            if _bad(item) or (isinstance(item, (list, tuple)) and any(_bad(x) for x in item)):
                out[f"{key}{UNDEFINED}"] = reason(str(key), value.get("metric"))
        return out
    if isinstance(value, (list, tuple)):
        return [strict(item) for item in value]
    return None if _bad(value) else value


def dumps(value, **options) -> str:
    return json.dumps(strict(value), allow_nan=False, **options)


def revive(value):
    """What `strict` wrote, read back: a null beside its `_undefined` reason is NaN again."""
    if isinstance(value, dict):
        out = {key: revive(item) for key, item in value.items()}
        for key in [k for k in out if isinstance(k, str) and k.endswith(UNDEFINED)]:
            name = key.removesuffix(UNDEFINED)
            if out.get(name, 0) is None:
                out[name] = math.nan
            elif isinstance(out.get(name), list):
                out[name] = [math.nan if x is None else x for x in out[name]]
        return out
    if isinstance(value, list):
        return [revive(item) for item in value]
    return value


def loads(text: str):
    return revive(json.loads(text))
