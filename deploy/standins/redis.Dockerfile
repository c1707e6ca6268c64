# Stand-in for the official redis image: Debian's redis-server (7.0, which has the Functions Herald
# needs), run the way the official image runs it: `redis-server ...` as the command, data in /data.
FROM herald-standin/base:bookworm
RUN apt-get update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends redis-server >/dev/null \
 && rm -rf /var/lib/apt/lists/* \
 && mkdir -p /data
# The official image is built with protected mode off (it is reached over the container network only);
# Debian's default would refuse every client that is not on loopback.
RUN printf '#!/bin/sh\nif [ "$1" = redis-server ]; then exec "$@" --protected-mode no; fi\nexec "$@"\n' \
      >/usr/local/bin/docker-entrypoint.sh \
 && chmod +x /usr/local/bin/docker-entrypoint.sh
WORKDIR /data
EXPOSE 6379
ENTRYPOINT ["docker-entrypoint.sh"]
CMD ["redis-server"]
LABEL org.herald.standin=true
