"Behaviour tests of m2df.runs (issue 23)."
