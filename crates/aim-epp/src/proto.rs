//! Generated from the vendored upstream protos (`proto/`, see its README).
//! The modules nest as the proto packages do, because the generated code
//! names other packages' types by relative paths (`super::super::…`).

#![allow(clippy::all, clippy::pedantic, missing_docs, rustdoc::all)]

pub mod envoy {
    pub mod config {
        pub mod core {
            pub mod v3 {
                tonic::include_proto!("envoy.config.core.v3");
            }
        }
    }
    pub mod extensions {
        pub mod filters {
            pub mod http {
                pub mod ext_proc {
                    pub mod v3 {
                        tonic::include_proto!("envoy.extensions.filters.http.ext_proc.v3");
                    }
                }
            }
        }
    }
    pub mod r#type {
        pub mod v3 {
            tonic::include_proto!("envoy.r#type.v3");
        }
    }
    pub mod service {
        pub mod ext_proc {
            pub mod v3 {
                tonic::include_proto!("envoy.service.ext_proc.v3");
            }
        }
    }
}

pub mod udpa {
    pub mod annotations {
        tonic::include_proto!("udpa.annotations");
    }
}

pub mod xds {
    pub mod annotations {
        pub mod v3 {
            tonic::include_proto!("xds.annotations.v3");
        }
    }
    pub mod core {
        pub mod v3 {
            tonic::include_proto!("xds.core.v3");
        }
    }
}

pub mod validate {
    tonic::include_proto!("validate");
}
