"""The REST routes, one router per area; ``skyport.api.app.create_app`` mounts them all.

Each route builds a command (``skyport.core.commands``), runs it on the Core
port and answers a ``skyport.protocol`` model: the route, the command and the
``CoreService`` handler are all a new call needs.
"""
