"Behaviour tests of m2df.episodes (issue 23)."
