"""Events: what syncguard tells the world about each decision.

One idea per module:

``native``   the native event (JSON Schema ``schemas/native-event.schema.json``), builders
``ocsf``     native event -> OCSF 1.8.0 Detection Finding (class 2004)
``hec``      Splunk HEC envelope
``formats``  payload format names -> formatter (native, ocsf, hec, hec-ocsf)
``sinks``    sink contract, stdout and JSON Lines file sinks
``webhook``  HMAC-signed HTTP webhook sink with retries
``outbox``   durable queue of undelivered webhook events (store migration 3)

Nothing is imported here so that ``detector.store`` can import ``outbox`` without a cycle.
"""
