"Behaviour tests of m2df.video (issue 23)."
