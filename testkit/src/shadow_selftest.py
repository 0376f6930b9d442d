#!/usr/bin/env python3
"""Checks shadow_service.py's messages against the AWS IoT Device SDK's shadow models
(awsiotsdk 1.31.0, awsiot/iotshadow.py): requests are built with the SDK's request
classes (UpdateNamedShadowRequest, GetNamedShadowRequest, ShadowState), every message
that arrives is parsed with the SDK's model for its topic (UpdateShadowResponse,
ShadowDeltaUpdatedEvent, ShadowUpdatedEvent, GetShadowResponse, ErrorResponse), and a
key the model does not know is a failure. Then the shadow rules: versions, delta,
the version conflict (409), the 8 KB limit (413), a clientToken over 64 bytes (400),
no shadow (404). Connects as a device; exits 0 and prints `ok` when all hold.
"""

import argparse
import inspect
import json
import queue
import re
import ssl
import sys

import paho.mqtt.client as mqtt
from awsiot import iotshadow as m

MODELS = {
    "get/accepted": m.GetShadowResponse,
    "get/rejected": m.ErrorResponse,
    "update/accepted": m.UpdateShadowResponse,
    "update/rejected": m.ErrorResponse,
    "update/delta": m.ShadowDeltaUpdatedEvent,
    "update/documents": m.ShadowUpdatedEvent,
}


def known_keys(model):
    """The payload keys the SDK's model reads (its from_payload)."""
    return set(re.findall(r"payload\.get\('([A-Za-z]+)'\)", inspect.getsource(model.from_payload)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--ca", required=True)
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--thing", required=True)
    args = ap.parse_args()
    thing, shadow = args.thing, "selftest"
    prefix = f"$aws/things/{thing}/shadow/name/{shadow}/"
    inbox = queue.Queue()
    subscribed = queue.Queue()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=thing)
    c.tls_set(ca_certs=args.ca, certfile=args.cert, keyfile=args.key,
              tls_version=ssl.PROTOCOL_TLS_CLIENT)
    c.on_connect = lambda cl, *_: cl.subscribe([(prefix + t, 1) for t in MODELS])
    c.on_subscribe = lambda *_: subscribed.put(True)
    c.on_message = lambda _c, _u, msg: inbox.put((msg.topic[len(prefix):], json.loads(msg.payload)))
    c.connect(args.host, args.port, 30)
    c.loop_start()
    subscribed.get(timeout=20)

    def parsed(topic, payload):
        model = MODELS[topic]
        extra = set(payload) - known_keys(model)
        assert not extra, f"{topic}: keys {extra} are not in awsiotsdk's {model.__name__}"
        return model.from_payload(payload)

    def expect(*topics):
        got = {}
        while len(got) < len(topics):
            topic, payload = inbox.get(timeout=20)
            assert topic in topics, f"unexpected {topic}: {payload}"
            got[topic] = parsed(topic, payload)
        return got

    def send(op, request):
        c.publish(prefix + op, json.dumps(request.to_payload()), qos=1)

    # No shadow yet.
    send("get", m.GetNamedShadowRequest(thing_name=thing, shadow_name=shadow, client_token="g0"))
    e = expect("get/rejected")["get/rejected"]
    assert (e.code, e.message, e.client_token) == (404, f"No shadow exists with name: {shadow}", "g0"), vars(e)

    # desired: accepted (version 1), the documents, and a delta.
    send("update", m.UpdateNamedShadowRequest(
        thing_name=thing, shadow_name=shadow, client_token="u1",
        state=m.ShadowState(desired={"config": "a = 1", "n": 1})))
    got = expect("update/accepted", "update/documents", "update/delta")
    a = got["update/accepted"]
    assert (a.version, a.client_token, a.state.desired) == (1, "u1", {"config": "a = 1", "n": 1}), vars(a)
    d = got["update/delta"]
    assert (d.version, d.state) == (1, {"config": "a = 1", "n": 1}), vars(d)
    assert got["update/documents"].current.version == 1

    # reported at version 1: accepted as version 2; the delta shrinks to what differs.
    send("update", m.UpdateNamedShadowRequest(
        thing_name=thing, shadow_name=shadow, client_token="u2", version=1,
        state=m.ShadowState(reported={"config": "a = 1", "n": 0})))
    got = expect("update/accepted", "update/documents")
    assert got["update/accepted"].version == 2
    docs = got["update/documents"]
    assert (docs.previous.version, docs.current.version) == (1, 2)
    assert docs.current.state.reported == {"config": "a = 1", "n": 0}

    # The same version again: a conflict.
    send("update", m.UpdateNamedShadowRequest(
        thing_name=thing, shadow_name=shadow, client_token="u3", version=1,
        state=m.ShadowState(reported={"n": 1})))
    e = expect("update/rejected")["update/rejected"]
    assert (e.code, e.message, e.client_token) == (409, "Version conflict", "u3"), vars(e)

    # get: the whole document, with the delta.
    send("get", m.GetNamedShadowRequest(thing_name=thing, shadow_name=shadow, client_token="g1"))
    g = expect("get/accepted")["get/accepted"]
    assert (g.version, g.client_token) == (2, "g1"), vars(g)
    assert g.state.desired == {"config": "a = 1", "n": 1}
    assert g.state.reported == {"config": "a = 1", "n": 0}
    assert g.state.delta == {"n": 1}, vars(g.state)

    # Over 8 KB of state: 413, and the document is unchanged.
    send("update", m.UpdateNamedShadowRequest(
        thing_name=thing, shadow_name=shadow, client_token="u4",
        state=m.ShadowState(reported={"big": "x" * 8200})))
    e = expect("update/rejected")["update/rejected"]
    assert (e.code, e.message) == (413, "The payload exceeds the maximum size allowed"), vars(e)
    send("get", m.GetNamedShadowRequest(thing_name=thing, shadow_name=shadow))
    g = expect("get/accepted")["get/accepted"]
    assert g.version == 2 and "big" not in g.state.reported, vars(g)

    # A clientToken over 64 bytes: 400.
    send("update", m.UpdateNamedShadowRequest(
        thing_name=thing, shadow_name=shadow, client_token="t" * 65,
        state=m.ShadowState(reported={"n": 1})))
    e = expect("update/rejected")["update/rejected"]
    assert (e.code, e.message) == (400, "Invalid clientToken"), vars(e)

    # null removes a key.
    send("update", m.UpdateNamedShadowRequest(
        thing_name=thing, shadow_name=shadow, version=2,
        state=m.ShadowState(desired={"n": None}, desired_is_nullable=True)))
    got = expect("update/accepted", "update/documents")
    assert got["update/accepted"].version == 3
    assert got["update/documents"].current.state.desired == {"config": "a = 1"}

    c.loop_stop()
    print("ok", flush=True)


if __name__ == "__main__":
    try:
        main()
    except (AssertionError, queue.Empty) as e:
        print(f"FAILED: {e!r}", flush=True)
        sys.exit(1)
