"""The model catalogue: what can be called, by which provider, at what price.

``registry`` is the query path's view (active models from ``model_pricing``, cached in the warm
container). Discovery, the rendered public catalogue and its Redis cache live beside it.
"""
