"""flexitok.sampling"""
