"""Images on one hypervisor: what an image is to an agent (source.py), the cache of verified
bases, overlays and captures (cache.py), and the ``image.*`` operations (ops.py; contract in
proto/v1/image.proto)."""
