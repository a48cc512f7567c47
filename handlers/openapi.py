"""The OpenAPI 3.1 description of /api/v1, served at /api/v1/openapi.json.

Written by hand next to the routes (handlers/api.py) and checked against the running
server by a schemathesis run in the tests: a status, a field or a code that one says and
the other does not do fails there.
"""

from __future__ import annotations

from typing import Any

from store.client_orders import MAX_QUANTITY


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


_JSON = "application/json"
_ERRORS = {
    "400": _error("The request cannot be read: bad JSON, a missing field, a bad value"),
    "401": _error("Missing or unknown API token"),
    "404": _error("No such order or product (or not the caller's)"),
    "405": _error("Method not allowed on this path"),
    "429": {
        **_error("Rate limited: retry after the given number of seconds"),
        "headers": {"Retry-After": {"schema": {"type": "string"}}},
    },
}


def _responses(ok: str, schema: str, *codes: str, extra: dict | None = None) -> dict[str, Any]:
    found = {
        ok: {
            "description": "Success",
            "content": {_JSON: {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
        },
        **{code: _ERRORS[code] for code in ("401", "405", "429", *codes)},
    }
    found.update(extra or {})
    return found


_ORDER_ID = {
    "name": "id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 1},
}
_SECURED = [{"bearer": []}]


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "keyvend business API",
            "version": "1.0.0",
            "description": (
                "Order keys in bulk, paid from a prepaid balance; download them once as "
                ".xlsx or .csv; get signed order.fulfilled callbacks. Errors are "
                '{"error": {"code": ..., "message": ...}} with stable codes.'
            ),
        },
        "servers": [{"url": "/api/v1"}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {
                                "code": {"type": "string"},
                                "message": {"type": "string"},
                            },
                        }
                    },
                },
                "Product": {
                    "type": "object",
                    "required": ["sku", "name", "price", "currency", "available"],
                    "properties": {
                        "sku": {"type": "string"},
                        "name": {"type": "string"},
                        "price": {"type": "string", "description": "e.g. 9.99"},
                        "currency": {"type": "string", "minLength": 3, "maxLength": 3},
                        "available": {"type": "integer", "minimum": 0},
                    },
                },
                "Products": {
                    "type": "object",
                    "required": ["data"],
                    "properties": {
                        "data": {"type": "array", "items": {"$ref": "#/components/schemas/Product"}}
                    },
                },
                "OrderRequest": {
                    "type": "object",
                    "required": ["sku", "quantity"],
                    "properties": {
                        "sku": {"type": "string", "minLength": 1, "maxLength": 64},
                        "quantity": {"type": "integer", "minimum": 1, "maximum": MAX_QUANTITY},
                    },
                },
                "Order": {
                    "type": "object",
                    "required": [
                        "id",
                        "sku",
                        "quantity",
                        "status",
                        "amount",
                        "currency",
                        "created_at",
                        "fulfilled_at",
                        "download_url",
                        "download_expires_at",
                    ],
                    "properties": {
                        "id": {"type": "integer"},
                        "sku": {"type": "string"},
                        "quantity": {"type": "integer"},
                        "status": {
                            "type": "string",
                            "enum": ["fulfilled", "review", "refunded", "disputed"],
                        },
                        "amount": {"type": "string"},
                        "currency": {"type": "string"},
                        "created_at": {"type": "string", "format": "date-time"},
                        "fulfilled_at": {"type": ["string", "null"], "format": "date-time"},
                        "download_url": {
                            "type": ["string", "null"],
                            "description": "A one-time link to the keys, once fulfilled",
                        },
                        "download_expires_at": {
                            "type": ["string", "null"],
                            "format": "date-time",
                        },
                    },
                },
                "Event": {
                    "type": "object",
                    "required": ["id", "type", "created", "data"],
                    "properties": {
                        "id": {"type": "integer"},
                        "type": {"type": "string", "enum": ["order.fulfilled"]},
                        "created": {"type": "integer", "description": "Unix time"},
                        "data": {
                            "type": "object",
                            "required": ["order"],
                            "properties": {
                                "order": {
                                    "type": "object",
                                    "required": ["id", "sku", "quantity", "status"],
                                    "properties": {
                                        "id": {"type": "integer"},
                                        "sku": {"type": "string"},
                                        "quantity": {"type": "integer"},
                                        "status": {"type": "string"},
                                    },
                                }
                            },
                        },
                    },
                },
                "Events": {
                    "type": "object",
                    "required": ["data", "has_more"],
                    "properties": {
                        "data": {"type": "array", "items": {"$ref": "#/components/schemas/Event"}},
                        "has_more": {"type": "boolean"},
                    },
                },
            },
        },
        "paths": {
            "/products": {
                "get": {
                    "operationId": "listProducts",
                    "summary": "Products, their price and the keys available now",
                    "security": _SECURED,
                    "responses": _responses("200", "Products"),
                }
            },
            "/orders": {
                "post": {
                    "operationId": "createOrder",
                    "summary": "Order keys, paid from the balance",
                    "description": (
                        "A retry with the same Idempotency-Key returns the same order "
                        "(with the header Idempotent-Replayed: true); the same key with a "
                        "different body is a 409. An order over the client's review "
                        "threshold is created in status review."
                    ),
                    "security": _SECURED,
                    "parameters": [
                        {
                            "name": "Idempotency-Key",
                            "in": "header",
                            "required": True,
                            "schema": {"type": "string", "minLength": 1, "maxLength": 255},
                        }
                    ],
                    "requestBody": {
                        "required": True,
                        "content": {
                            _JSON: {"schema": {"$ref": "#/components/schemas/OrderRequest"}}
                        },
                    },
                    "responses": _responses(
                        "201",
                        "Order",
                        "400",
                        "404",
                        extra={
                            "402": _error("The balance and credit limit do not cover the order"),
                            "409": _error(
                                "Idempotency-Key reused with another body (idempotency_conflict), "
                                "not enough keys (out_of_stock), or product off sale"
                            ),
                        },
                    ),
                }
            },
            "/orders/{id}": {
                "get": {
                    "operationId": "getOrder",
                    "summary": "An order's status and, once fulfilled, a one-time download link",
                    "security": _SECURED,
                    "parameters": [_ORDER_ID],
                    "responses": _responses("200", "Order", "404"),
                }
            },
            "/orders/{id}/download": {
                "post": {
                    "operationId": "newDownloadLink",
                    "summary": "Issue a new one-time download link (the previous one ends)",
                    "security": _SECURED,
                    "parameters": [_ORDER_ID],
                    "responses": _responses(
                        "201",
                        "Order",
                        "404",
                        extra={"409": _error("The order holds no keys (not fulfilled)")},
                    ),
                }
            },
            "/events": {
                "get": {
                    "operationId": "listEvents",
                    "summary": "Events after a given id, oldest first",
                    "security": _SECURED,
                    "parameters": [
                        {
                            "name": "after",
                            "in": "query",
                            "schema": {"type": "integer", "minimum": 0, "default": 0},
                        },
                        {
                            "name": "limit",
                            "in": "query",
                            "schema": {
                                "type": "integer",
                                "minimum": 1,
                                "maximum": 1000,
                                "default": 100,
                            },
                        },
                    ],
                    "responses": _responses("200", "Events", "400"),
                }
            },
            "/downloads/{token}": {
                "get": {
                    "operationId": "download",
                    "summary": "The order's keys, once: the link is the credential",
                    "description": (
                        "Works once and until it expires; every attempt is recorded with the "
                        "caller's address. With an Authorization header, only the order's "
                        "own client may use it."
                    ),
                    "security": [{}, {"bearer": []}],
                    "parameters": [
                        {
                            "name": "token",
                            "in": "path",
                            "required": True,
                            "schema": {"type": "string"},
                        },
                        {
                            "name": "format",
                            "in": "query",
                            "schema": {
                                "type": "string",
                                "enum": ["xlsx", "csv"],
                                "default": "xlsx",
                            },
                        },
                    ],
                    "responses": {
                        "200": {
                            "description": "The spreadsheet",
                            "content": {
                                "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet": {
                                    "schema": {"type": "string", "format": "binary"}
                                },
                                "text/csv": {"schema": {"type": "string"}},
                            },
                        },
                        **{code: _ERRORS[code] for code in ("400", "401", "404", "405", "429")},
                        "410": _error("The link was used already (download_used) or expired"),
                    },
                }
            },
        },
    }
