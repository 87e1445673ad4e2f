//! hangar-engineconn-plugin
