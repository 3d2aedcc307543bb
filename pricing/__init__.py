"""Pricing: exact cost per call over a dated catalog, worst-case estimates, imports and re-rating.

Pure functions; money leaves this package as ``int``: a call's cost in nano-USD
(``Cost.nano_usd``, ``Cost.micro_usd`` derived), bounds in micro-USD. ``Decimal``
lives only in here, built from the catalog's strings and rounded once per call.

    catalog = load_catalog(overrides)                       # shipped data + overrides
    price = catalog.price_at(model, ts_ms, provider)        # raises UnknownModel
    price, estimated = catalog.resolve(model, ts_ms, policy="fallback", fallback_entry="...")
    cost(tokens, price, service_tier=..., batch=..., web_search_calls=...) -> Cost
    worst_case(price, RequestShape(...)) -> int             # a strict reservation's hold
    predicted(price, RequestShape(...), CallProfile | None) # a predicted reservation's hold
"""
from llmgw.pricing.catalog import Catalog, UnknownModel, load_catalog
from llmgw.pricing.cost import Cost, cost
from llmgw.pricing.estimate import CallProfile, RequestShape, predicted, worst_case
from llmgw.pricing.price import CatalogError, Price
from llmgw.pricing.rerate import CallOptions, rerate

__all__ = [
    "CallOptions", "CallProfile", "Catalog", "CatalogError", "Cost", "Price", "RequestShape", "UnknownModel",
    "cost", "load_catalog", "predicted", "rerate", "worst_case",
]
