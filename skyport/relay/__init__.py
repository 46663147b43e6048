"""The relay: TCP byte streams between a user's host and a job's node, through no open port.

Nodes only dial out (DESIGN.md, Trust), so nothing can connect *to* a server
that a job runs.  The relay carries TCP streams over WebSockets on the control
plane's own mutual-TLS port instead:

* every node's agent holds a control channel (``/agent/v1/jobs/{id}/relay/nodes/{k}``,
  its job token) on which the control plane orders "join stream S";
* a forwarder on the user's host (``skyport forward``, ``skyport.relay.forwarder``)
  listens on ``127.0.0.1:LOCAL``; each accepted connection opens
  ``/v1/jobs/{id}/relay/connect?node=k&port=P`` with the user's certificate;
  the agent of node k dials ``127.0.0.1:P`` on its node and opens the stream's
  second leg; the control plane (``skyport.relay.hub``) joins the two;
* the reverse direction (a server on the node calling home, e.g. a single-user
  Jupyter server calling the hub's API): the forwarder holds a listener channel
  (``/v1/jobs/{id}/relay/listen/{name}``), the payload asks its agent for a
  local port (``python -m skyport.relay.payload listen NAME``); a connection to
  that port becomes a stream to the forwarder, which dials its own target.

Each leg is one WebSocket carrying raw bytes (binary frames; the text frame
``eof`` is a half-close), so HTTP, WebSockets and TLS inside pass unchanged.
Only a caller whose certificate owns the job (or an admin) and that job's
agents reach its streams.
"""
