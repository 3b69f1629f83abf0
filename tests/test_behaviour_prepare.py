"Behaviour tests of m2df.prepare (issue 23)."
