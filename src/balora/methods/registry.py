"""The built-in methods, registered in the order the command line and the tables list them.

Adding a method: write its class in a new module of this package (subclass
:class:`~balora.methods.base.AdapterMethod` or :class:`~balora.methods.base.Method`, override what
differs) and add one line below. See docs/design.md, "Adding a method".
"""

from __future__ import annotations

from .base import register_method
from .dual import DualLoraMethod
from .full import FullMethod
from .lora import DoraMethod, LoraMethod
from .pissa import BALoraMethod, PissaMethod

for _method in (LoraMethod, PissaMethod, BALoraMethod, DoraMethod, DualLoraMethod, FullMethod):
    register_method(_method)
