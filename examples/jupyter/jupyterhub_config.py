# A JupyterHub whose notebook servers are Sky Port jobs (skyport.jupyter.SkyPortSpawner).
#
#   pip install 'skyport[jupyter]'
#   skyport user add hub            # on the control plane: the hub's own Sky Port user
#   jupyterhub -f examples/jupyter/jupyterhub_config.py
#
# No node opens a port: the hub reaches each server through the relay (a
# forwarder on this host, 127.0.0.1 only), and each server calls the hub's API
# back the same way.
c = get_config()  # noqa: F821 - JupyterHub's config loader provides it

c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.spawner_class = "skyport"
c.SkyPortSpawner.home = "/srv/skyport"         # the state dir holding the hub's certificate
c.SkyPortSpawner.skyport_user = "hub"
c.SkyPortSpawner.defaults = {"time": "04:00:00"}
c.JupyterHub.cleanup_servers = False           # a restarted hub keeps its servers
c.JupyterHub.authenticator_class = "dummy"     # replace with your site's authenticator
c.Authenticator.allow_all = True
