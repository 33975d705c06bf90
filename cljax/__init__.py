"""cljax: continual learning in JAX.

Layers (imports point down only): ``losses``, ``models`` and ``data`` hold pure
pieces; ``methods`` compose them; ``train`` runs a method on a stream;
``metrics`` and ``report`` summarise. See DESIGN.md.
"""

__version__ = "0.2.0"
