"""cljax: continual learning in JAX.

Layers (imports point down only): ``losses``, ``regularizers``,
``constraints``, ``memory``, ``models`` and ``data`` hold pure pieces;
``methods`` compose them; ``train`` runs a method on a stream; ``metrics``
and ``report`` summarise; ``experiment`` and ``cli`` run configs. The
README's "Library layout" and "Python API" sections are the map.
"""

__version__ = "0.3.4"
