"""flexitok.train"""
