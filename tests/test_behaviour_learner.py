"Behaviour tests of m2df.learner (issue 23)."
