"""Parameter-efficient methods, each one file behind one interface (base.Method), plugged in through one table
as PEFT plugs in its tuners: how many parameters a layer trains under it (counted from shapes alone, before any
weight is loaded), what sizes it (lora.r, lora.n_frequency, or nothing), and PEFT's config for it (BitFit, which
PEFT lacks, brings its own model)."""

from __future__ import annotations

from .adalora import AdaLora
from .base import Method
from .bitfit import BitFit
from .fourierft import FourierFT
from .ia3 import IA3
from .lora import Lora
from .vera import Vera

METHODS: dict[str, Method] = {
    method.name: method for method in (Lora(), Vera(), FourierFT(), IA3(), BitFit(), AdaLora())
}

# Every file any method saves an adapter in (exports copy them; a run's adapter folder holds one method's).
ADAPTER_FILES = tuple(dict.fromkeys(name for method in METHODS.values() for name in method.files))

__all__ = ["ADAPTER_FILES", "METHODS", "Method", "method_of"]


def method_of(cfg) -> Method:
    """The method of a configuration (a config.Config: config.py takes its method names from here)."""
    return METHODS[cfg.lora.method]
