"""The benchmark's baseline: a bare Flask POST endpoint, served with the API's gunicorn settings.

Whatever it costs per request is the HTTP stack's floor on this machine (gunicorn, Flask,
JSON in and out), with no validation, no model and no metrics.
"""

from flask import Flask, jsonify, request

app = Flask(__name__)


@app.post("/hello")
def hello():
    request.get_data()
    return jsonify({"hello": "world"})
