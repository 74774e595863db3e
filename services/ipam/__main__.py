from pinet.services.ipam.app import main

main()
