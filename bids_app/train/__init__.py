"""bids_app.train"""
