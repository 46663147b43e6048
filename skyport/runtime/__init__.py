"""Code that runs inside a job, on a job cluster's node (see ``function``)."""
