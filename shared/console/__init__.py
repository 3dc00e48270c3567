"""The web console each gateway serves under ``/ui/``: sign-in with an API token, a session
cookie, CSRF protection, and pages that call the gateway's own API with the session's token.

``sessions.py`` (server-side sessions), ``middleware.py`` (the ``/ui`` routes and the
``/ui/api/…`` → ``/api/v1/…`` forwarding), ``views.py`` (the status API the pages read:
overview, paged mailbox search, alarms, lag history), ``snapshot.py`` (one short-lived status
snapshot for all of them), ``mount.py`` (wires the console and the alerts into a gateway's app),
``static/`` (the pages, hand-written HTML, CSS and JavaScript; nothing fetched from elsewhere).
"""
