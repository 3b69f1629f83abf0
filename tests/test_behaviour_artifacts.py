"Behaviour tests of m2df.artifacts (issue 23)."
