# syntax=docker/dockerfile:1
# The production image: the operator binary built without the `demo` feature (so without the
# test control plane), on distroless cc (glibc, CA certificates, no shell), as a non-root user.
#
#   docker build -t confluence-auth-operator:0.1.0 .
#
# The chart runs the binary at /usr/local/bin/confluence-auth-operator (tests/packaging.rs
# checks that this file and the chart agree).

FROM rust:1.95-bookworm AS build
WORKDIR /src
# aws-lc-sys (kube's TLS provider) builds C code; CMake is its fallback build on some targets.
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --no-default-features --package confluence-auth-operator --bin confluence-auth-operator \
    && install -D -m 0755 target/release/confluence-auth-operator /out/confluence-auth-operator

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /out/confluence-auth-operator /usr/local/bin/confluence-auth-operator
# 65532 is distroless' "nonroot"; the chart's podSecurityContext uses the same ids.
USER 65532:65532
EXPOSE 8080 9090
ENTRYPOINT ["/usr/local/bin/confluence-auth-operator"]
CMD ["run"]
