"""Alerts: what an on-call admin must hear about, sent as signed webhooks and optionally as mail.

``model.py`` (alarms and alerts), ``rules.py`` (mailbox statuses -> alarms, pure), ``certs.py``
(certificates close to expiry), ``webhook.py`` (JSON POST, retried, HMAC-SHA256 signature),
``mail.py`` (SMTP to the admins, notices to users), ``monitor.py`` (the loop that evaluates,
de-duplicates and sends), ``metrics.py`` (the same conditions on ``/metrics`` for Prometheus).
"""
