"""nbgrader for a learner on the workshop hub (found through JUPYTER_CONFIG_PATH, set by hub/jupyterhub_config.py):
the course id, the hub's exchange folder and the learner's hub name as student id, so that `nbgrader
fetch_assignment` and `nbgrader submit` reach the instructor's release and collect."""

import os

c = get_config()  # noqa: F821 (nbgrader's config loader defines it)
c.CourseDirectory.course_id = "llm-course"
c.Exchange.root = os.environ["COURSE_EXCHANGE"]
# Every learner's server runs as the same OS user (SimpleLocalProcessSpawner): submit under the hub's name instead.
if os.environ.get("JUPYTERHUB_USER"):
    c.CourseDirectory.student_id = os.environ["JUPYTERHUB_USER"]
