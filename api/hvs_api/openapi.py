"""The OpenAPI 3.0 description of the API, built from the feature table so the two never drift."""

from hvs_model.features import FEATURE_NAMES, FEATURES, LABELS

from hvs_api.feedback import FEEDBACK_REASONS
from hvs_api.prediction_ids import ID_PATTERN
from hvs_api.validation import INVALID_REASONS

# The reasons only /feedback gives; the others it shares with /predict.
FEEDBACK_ONLY = tuple(r for r in FEEDBACK_REASONS if r not in INVALID_REASONS)


def _record_schema() -> dict:
    return {
        "type": "object",
        "additionalProperties": False,
        "required": list(FEATURE_NAMES),
        "properties": {
            f.name: {
                "type": "number",
                "minimum": f.minimum,
                "maximum": f.maximum,
                "description": f"{f.description} ({f.unit})",
            }
            for f in FEATURES
        },
    }


def _json(schema_ref: str) -> dict:
    return {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema_ref}"}}}


def _error_response(description: str) -> dict:
    return {"description": description, "content": _json("Error")}


def build(app_version: str, max_records: int, max_body_bytes: int) -> dict:
    """Return the OpenAPI document for this deployment's limits."""
    model_identity = {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "version": {"type": "string"},
            "run_id": {"type": "string"},
            "uri": {"type": "string"},
            "training_hazardous_share": {"type": "number", "nullable": True},
        },
    }
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "HVS Prediction API",
            "version": app_version,
            "description": (
                "Predicts whether HVS sensor readings are Normal or Hazardous. "
                f"Bodies are limited to {max_body_bytes} bytes and batches to {max_records} records."
            ),
        },
        "paths": {
            "/predict": {
                "post": {
                    "summary": "Predict the hazard state of one record or a batch",
                    "requestBody": {
                        "required": True,
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/PredictRequest"}}},
                    },
                    "responses": {
                        "200": {"description": "Predictions", "content": _json("PredictResponse")},
                        "400": _error_response("Malformed JSON or a body of the wrong shape"),
                        "413": _error_response("Body larger than the limit"),
                        "415": _error_response("Content-Type is not application/json"),
                        "422": _error_response(
                            "A field is missing, unknown, of the wrong type or out of range, or the batch is empty "
                            "or too large"
                        ),
                        "503": _error_response("No model is loaded"),
                    },
                }
            },
            "/feedback": {
                "post": {
                    "summary": "Record the true labels of earlier predictions, by their ids (all or nothing)",
                    "requestBody": {"required": True, "content": _json("FeedbackRequest")},
                    "responses": {
                        "200": {"description": "Every label recorded", "content": _json("FeedbackResponse")},
                        "400": _error_response("Malformed JSON or a body of the wrong shape"),
                        "409": _error_response("An id has a label already; nothing was recorded"),
                        "413": _error_response("Body larger than the limit"),
                        "415": _error_response("Content-Type is not application/json"),
                        "422": _error_response(
                            "A field is missing, unknown or of the wrong type, a label unknown, an id unknown, "
                            "expired or repeated, or the batch is empty or too large"
                        ),
                    },
                }
            },
            "/health": {
                "get": {
                    "summary": "Liveness: the process serves requests",
                    "responses": {"200": {"description": "Alive", "content": _json("Health")}},
                }
            },
            "/ready": {
                "get": {
                    "summary": "Readiness: a model is loaded",
                    "responses": {
                        "200": {"description": "Ready", "content": _json("Health")},
                        "503": {"description": "Not ready", "content": _json("Health")},
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "Record": _record_schema(),
                "PredictRequest": {
                    "oneOf": [
                        {"$ref": "#/components/schemas/Record"},
                        {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["records"],
                            "properties": {
                                "records": {
                                    "type": "array",
                                    "minItems": 1,
                                    "maxItems": max_records,
                                    "items": {"$ref": "#/components/schemas/Record"},
                                }
                            },
                        },
                    ]
                },
                "Prediction": {
                    "type": "object",
                    "required": ["id", "label", "label_id", "hazard_probability", "model_version"],
                    "properties": {
                        "id": {"type": "string", "description": "Send the true label back with it: POST /feedback"},
                        "label": {"type": "string", "enum": list(LABELS.values())},
                        "label_id": {"type": "integer", "enum": list(LABELS)},
                        "hazard_probability": {"type": "number", "minimum": 0, "maximum": 1},
                        "model_version": {"type": "string"},
                    },
                },
                "PredictResponse": {
                    "type": "object",
                    "properties": {
                        "prediction": {"$ref": "#/components/schemas/Prediction"},
                        "predictions": {"type": "array", "items": {"$ref": "#/components/schemas/Prediction"}},
                        "model": model_identity,
                    },
                },
                "Label": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["id", "label"],
                    "properties": {
                        "id": {
                            "type": "string",
                            "pattern": ID_PATTERN,
                            "description": "A prediction's id, as /predict gave it",
                        },
                        "label": {"type": "string", "enum": list(LABELS.values()), "description": "The true label"},
                    },
                },
                "FeedbackRequest": {
                    "oneOf": [
                        {"$ref": "#/components/schemas/Label"},
                        {
                            "type": "object",
                            "additionalProperties": False,
                            "required": ["feedback"],
                            "properties": {
                                "feedback": {
                                    "type": "array",
                                    "minItems": 1,
                                    "maxItems": max_records,
                                    "items": {"$ref": "#/components/schemas/Label"},
                                }
                            },
                        },
                    ]
                },
                "FeedbackResponse": {
                    "type": "object",
                    "required": ["recorded"],
                    "properties": {"recorded": {"type": "integer", "minimum": 1}},
                },
                "Error": {
                    "type": "object",
                    "required": ["error", "message"],
                    "properties": {
                        "error": {
                            "type": "string",
                            "description": "A short code: one of the invalid-input reasons "
                            f"({', '.join(INVALID_REASONS)}), of the feedback reasons "
                            f"({', '.join(FEEDBACK_ONLY)}) or an HTTP error name",
                        },
                        "message": {"type": "string"},
                        "field": {"type": "string", "nullable": True},
                        "problems": {"type": "array", "items": {"type": "object"}},
                    },
                },
                "Health": {
                    "type": "object",
                    "required": ["status"],
                    "properties": {
                        "status": {"type": "string"},
                        "ready": {"type": "boolean"},
                        "version": {"type": "string"},
                        "model": {**model_identity, "nullable": True},
                        "reason": {"type": "string"},
                    },
                },
            }
        },
    }
