"""MQTT devices that flood a broker: paho-mqtt clients publishing QoS 1.

    python3 mqtt_flood.py HOST PORT CLIENTS PER_CLIENT SECONDS

CLIENTS connections (client ids flood-0, flood-1, ...), each publishing
PER_CLIENT readings {"seq": N} to sensors/flood-K/telemetry as fast as
paho's in-flight window (20) lets it. Every PUBACK is printed as it comes,
"acked K N", one line each; the script ends when every reading is
acknowledged, when SECONDS have passed, or once every connection is lost,
and then prints "done".
"""

import sys
import threading
import time

import paho.mqtt.client as mqtt


def main():
    host, port = sys.argv[1], int(sys.argv[2])
    clients, per, seconds = int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
    assert per < 65536, "one message id each" 
    out_lock = threading.Lock()
    left = [clients]
    finished = threading.Event()

    def report(line):
        with out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    def one(k):
        acked = [0]
        gone = threading.Event()
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"flood-{k}", clean_session=True
        )
        c.max_inflight_messages_set(20)

        def on_publish(_c, _u, mid, _rc, _p):
            # paho numbers a client's messages 1, 2, ...: reading mid - 1.
            report(f"acked {k} {mid - 1}")
            acked[0] += 1
            if acked[0] == per:
                gone.set()

        def on_disconnect(_c, _u, _f, _rc, _p):
            gone.set()

        c.on_publish = on_publish
        c.on_disconnect = on_disconnect
        c.connect(host, port, keepalive=30)
        c.loop_start()
        topic = f"sensors/flood-{k}/telemetry"
        for seq in range(per):
            info = c.publish(topic, f'{{"seq": {seq}}}', qos=1)
            assert info.mid == seq + 1, (info.mid, seq)
        gone.wait(seconds)
        c.loop_stop()
        with out_lock:
            left[0] -= 1
            if left[0] == 0:
                finished.set()

    for k in range(clients):
        threading.Thread(target=one, args=(k,), daemon=True).start()
    finished.wait(seconds + 5)
    report("done")


if __name__ == "__main__":
    main()
