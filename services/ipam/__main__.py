from services.ipam.app import main

main()
