#!/usr/bin/env python3
"""The AWS IoT Device Shadow service over MQTT, for tests: named shadows on the
reserved topics of a (TLS) mosquitto, with the shadow rules of moto's IoT data plane.

    $aws/things/THING/shadow/name/SHADOW/get     -> .../get/accepted | .../get/rejected
    $aws/things/THING/shadow/name/SHADOW/update  -> .../update/accepted | .../update/rejected,
                                                    .../update/documents, .../update/delta

The rules of the documents (desired/reported merge, null deletes a key, delta, the
version increment, the version-conflict rejection) are moto's FakeShadow and
IoTDataPlaneBackend (moto 5.2.1, moto/iotdata/models.py), called as they are. What moto
does not model, because it is part of the MQTT front of the service, follows the AWS IoT
Core developer guide ("Device Shadow MQTT topics", "Device Shadow error messages",
"Diagnosing problems with shadows"):

- a `clientToken` is echoed in the response; longer than 64 bytes: 400 "Invalid clientToken";
- the desired and reported state together may hold 8 KB (8192 bytes) of JSON:
  413 "The payload exceeds the maximum size allowed";
- a request for a shadow that does not exist: 404 "No shadow exists with name: NAME";
- /update/delta is published when an accepted update sets `desired` and desired and
  reported then differ, carrying the difference; /update/documents carries the previous
  and current documents.

The cloud side (the fleet operator's UpdateThingShadow / GetThingShadow) is driven over
stdin, one JSON object a line, each answered with one JSON line on stdout:

    {"op": "update", "thing": T, "shadow": S, "payload": {...}}  -> {"ok": DOC} | {"error": {...}}
    {"op": "get", "thing": T, "shadow": S}                        -> {"ok": DOC} | {"error": {...}}
    {"op": "requests", "thing": T, "shadow": S}                   -> {"ok": N}, device requests seen

An update from stdin publishes on the topics exactly as one from MQTT does. Prints
`ready` once subscribed. Needs moto 5.2.1 and paho-mqtt 2.1.0.
"""

import argparse
import copy
import json
import ssl
import sys
import threading
import time

import paho.mqtt.client as mqtt
from moto.core import DEFAULT_ACCOUNT_ID
from moto.iot.models import iot_backends
from moto.iotdata.exceptions import IoTDataPlaneClientError
from moto.iotdata.models import iotdata_backends

REGION = "us-east-1"
# AWS IoT Core: "The device's shadow supports 8 KB of data only" (desired + reported).
MAX_STATE_BYTES = 8192
MAX_CLIENT_TOKEN_BYTES = 64
PREFIX = "$aws/things/"

lock = threading.Lock()
requests = {}


def backend():
    return iotdata_backends[DEFAULT_ACCOUNT_ID][REGION]


def ensure_thing(thing):
    iot = iot_backends[DEFAULT_ACCOUNT_ID][REGION]
    try:
        iot.describe_thing(thing)
    except Exception:
        iot.create_thing(thing, None, None)


def now():
    return int(time.time())


def error(code, message, token):
    e = {"code": code, "message": message, "timestamp": now()}
    if token is not None:
        e["clientToken"] = token
    return e


def state_bytes(doc):
    state = doc.get("state") or {}
    part = {k: state[k] for k in ("desired", "reported") if k in state}
    return len(json.dumps(part, separators=(",", ":")).encode())


def shadow_of(thing, shadow):
    iot = iot_backends[DEFAULT_ACCOUNT_ID][REGION]
    return iot.describe_thing(thing).thing_shadows.get(shadow)


def do_update(thing, shadow, raw):
    """Runs one update; returns the list of (topic suffix, message) to publish."""
    token = None
    try:
        payload = json.loads(raw)
    except ValueError:
        payload = None
    if isinstance(payload, dict):
        token = payload.get("clientToken")
        if token is not None and (
            not isinstance(token, str) or len(token.encode()) > MAX_CLIENT_TOKEN_BYTES
        ):
            return [("update/rejected", error(400, "Invalid clientToken", None))]
    with lock:
        ensure_thing(thing)
        # moto merges into the previous document's own dicts: keep a copy to restore.
        previous = copy.deepcopy(shadow_of(thing, shadow))
        before = previous.to_dict(include_delta=False) if previous and not previous.deleted else None
        try:
            new = backend().update_thing_shadow(thing, raw, shadow)
        except IoTDataPlaneClientError as e:
            message = e.message
            return [("update/rejected", error(e.code, message, token))]
        except (TypeError, AttributeError):
            # moto reads `version` from a shadow that does not exist yet.
            return [("update/rejected", error(409, "Version conflict", token))]
        current = new.to_dict(include_delta=False)
        if state_bytes(current) > MAX_STATE_BYTES:
            # Undo: the service never stores a document over the limit.
            iot = iot_backends[DEFAULT_ACCOUNT_ID][REGION]
            if previous is None:
                iot.describe_thing(thing).thing_shadows.pop(shadow, None)
            else:
                iot.describe_thing(thing).thing_shadows[shadow] = previous
            return [
                ("update/rejected", error(413, "The payload exceeds the maximum size allowed", token))
            ]
        out = []
        accepted = new.to_response_dict()
        if token is not None:
            accepted["clientToken"] = token
        out.append(("update/accepted", accepted))
        docs = {"previous": before, "current": current, "timestamp": new.timestamp}
        if before is None:
            docs.pop("previous")
        out.append(("update/documents", docs))
        state = payload.get("state") if isinstance(payload, dict) else None
        if isinstance(state, dict) and state.get("desired"):
            delta = new.parse_payload(new.desired, new.reported)
            if delta:
                meta = new._create_metadata_from_state(delta, new.timestamp)
                event = {
                    "version": new.version,
                    "timestamp": new.timestamp,
                    "state": delta,
                    "metadata": meta,
                }
                if token is not None:
                    event["clientToken"] = token
                out.append(("update/delta", event))
        return out


def do_get(thing, shadow, raw):
    token = None
    try:
        payload = json.loads(raw) if raw else {}
        if isinstance(payload, dict):
            token = payload.get("clientToken")
    except ValueError:
        pass
    with lock:
        ensure_thing(thing)
        try:
            doc = backend().get_thing_shadow(thing, shadow).to_dict()
        except IoTDataPlaneClientError:
            return [("get/rejected", error(404, f"No shadow exists with name: {shadow}", token))]
    if token is not None:
        doc["clientToken"] = token
    return [("get/accepted", doc)]


def parse_topic(topic):
    # $aws/things/THING/shadow/name/SHADOW/OP
    if not topic.startswith(PREFIX):
        return None
    parts = topic[len(PREFIX):].split("/")
    if len(parts) != 5 or parts[1] != "shadow" or parts[2] != "name":
        return None
    return parts[0], parts[3], parts[4]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--client-id", default="ferry-shadow-service")
    args = ap.parse_args()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=args.client_id)
    client.tls_set(ca_certs=args.ca, certfile=args.cert, keyfile=args.key,
                   tls_version=ssl.PROTOCOL_TLS_CLIENT)
    subscribed = threading.Event()

    def publish(thing, shadow, messages):
        for suffix, message in messages:
            topic = f"{PREFIX}{thing}/shadow/name/{shadow}/{suffix}"
            client.publish(topic, json.dumps(message), qos=1)

    def on_connect(c, _u, _f, rc, _p):
        if rc != 0:
            print(f"connect failed: {rc}", file=sys.stderr, flush=True)
            return
        c.subscribe([(PREFIX + "+/shadow/name/+/get", 1), (PREFIX + "+/shadow/name/+/update", 1)])

    def on_subscribe(_c, _u, _mid, _rc, _p):
        subscribed.set()

    def on_message(_c, _u, msg):
        parsed = parse_topic(msg.topic)
        if parsed is None:
            return
        thing, shadow, op = parsed
        with lock:
            requests[(thing, shadow)] = requests.get((thing, shadow), 0) + 1
        raw = msg.payload.decode("utf-8", errors="replace")
        if op == "get":
            publish(thing, shadow, do_get(thing, shadow, raw))
        elif op == "update":
            publish(thing, shadow, do_update(thing, shadow, raw))

    client.on_connect = on_connect
    client.on_subscribe = on_subscribe
    client.on_message = on_message
    client.connect(args.host, args.port, keepalive=30)
    client.loop_start()
    if not subscribed.wait(20):
        print("not subscribed within 20 s", file=sys.stderr, flush=True)
        sys.exit(1)
    print("ready", flush=True)

    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            cmd = json.loads(line)
            thing, shadow = cmd["thing"], cmd["shadow"]
            if cmd["op"] == "update":
                messages = do_update(thing, shadow, json.dumps(cmd["payload"]))
                publish(thing, shadow, messages)
                suffix, first = messages[0]
                answer = {"ok": first} if suffix == "update/accepted" else {"error": first}
            elif cmd["op"] == "get":
                suffix, first = do_get(thing, shadow, "")[0]
                answer = {"ok": first} if suffix == "get/accepted" else {"error": first}
            elif cmd["op"] == "requests":
                with lock:
                    answer = {"ok": requests.get((thing, shadow), 0)}
            else:
                answer = {"error": {"message": f"unknown op {cmd['op']!r}"}}
        except Exception as e:  # a bad command is answered, never the end of the service
            answer = {"error": {"message": f"{type(e).__name__}: {e}"}}
        print(json.dumps(answer), flush=True)
    client.loop_stop()


if __name__ == "__main__":
    main()
