//! The deprovisioning engine end to end: against scim2-server (an independent
//! SCIM 2.0 implementation) for the standard behaviour, and against the project's
//! Genesys Cloud simulator for what only Genesys does.

mod genesys;
mod scim2;
