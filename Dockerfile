# buildd in a container: the broker by default, or the agent.
#   docker build -t buildd .
#   docker run -p 3000:3000 -v buildd-data:/data buildd
#   docker run -e BUILDD_SERVER=… -e BUILDD_API_KEY=… -e ANTHROPIC_API_KEY=… \
#     -v "$PWD:/work" -w /work buildd agent
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked && cp target/release/buildd /buildd

FROM debian:bookworm-slim
# git for the agent's worktrees; Node.js and Claude Code for its default runner.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates git nodejs npm \
 && npm install -g @anthropic-ai/claude-code \
 && rm -rf /var/lib/apt/lists/* /root/.npm
COPY --from=build /buildd /usr/local/bin/buildd
ENV BUILDD_LISTEN=0.0.0.0:3000 \
    BUILDD_DATABASE_URL=sqlite:/data/buildd.db \
    BUILDD_AGENT_DIR=/data/agent
VOLUME /data
EXPOSE 3000
ENTRYPOINT ["buildd"]
CMD ["serve"]
